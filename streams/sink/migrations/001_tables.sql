-- Extractions: one row per (note, revision). revision 0 is the model's output, reviews add
-- higher revisions. ReplacingMergeTree collapses replays of the same (note_id, revision),
-- so at-least-once delivery never double-counts; every revision is kept (the audit trail).
CREATE TABLE IF NOT EXISTS {db}.extractions
(
    note_id String,
    revision UInt32,
    patient_id String,
    encounter_id Nullable(String),
    note_type LowCardinality(String),
    source LowCardinality(String),
    created_at DateTime64(3, 'UTC'),
    text String,
    status LowCardinality(String),
    models Map(String, String),
    doc_labels Array(Tuple(task String, label String, probability Float32)),
    entities Array(Tuple(task String, label String, start UInt32, end UInt32, text String, confidence Float32)),
    processed_at DateTime64(3, 'UTC'),
    kafka_partition UInt32,
    kafka_offset UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(processed_at)
ORDER BY (note_id, revision);

CREATE TABLE IF NOT EXISTS {db}.review_tasks
(
    note_id String,
    revision UInt32,
    note_type LowCardinality(String),
    created_at DateTime64(3, 'UTC'),
    reasons Array(Tuple(task String, kind String, label String, start Nullable(UInt32), end Nullable(UInt32), confidence Float32, threshold Float32))
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (note_id, revision);

CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    source_topic String,
    source_partition UInt32,
    source_offset UInt64,
    stage LowCardinality(String),
    error_kind LowCardinality(String),
    message String,
    raw_base64 String,
    key_base64 Nullable(String),
    failed_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(failed_at)
ORDER BY (source_topic, source_partition, source_offset, stage);

-- The final state analysts query: the newest revision of each note, replays collapsed.
CREATE VIEW IF NOT EXISTS {db}.extractions_final AS
SELECT *
FROM {db}.extractions FINAL
ORDER BY note_id, revision DESC
LIMIT 1 BY note_id;
