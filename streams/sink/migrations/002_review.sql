-- Reviewers' decisions: the audit trail. One row per decision; replays collapse on (note_id, decision_id).
-- changes.label is the label the change is about (the model's label before it, or the added one), so
-- agreement per label is a GROUP BY.
CREATE TABLE IF NOT EXISTS {db}.review_decisions
(
    decision_id String,
    note_id String,
    base_revision UInt32,
    reviewer_id LowCardinality(String),
    decided_at DateTime64(3, 'UTC'),
    changes Array(Tuple(task String, action LowCardinality(String), label String, before Nullable(String), after Nullable(String))),
    comment Nullable(String),
    kafka_partition UInt32,
    kafka_offset UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(decided_at)
ORDER BY (note_id, decision_id);

-- The review queue: review tasks whose revision is still the note's newest (a reviewed revision takes
-- the note out). The review app lists it oldest first; leases live in the app.
CREATE VIEW IF NOT EXISTS {db}.review_queue AS
SELECT t.note_id AS note_id, t.revision AS revision, t.note_type AS note_type, t.created_at AS queued_at, t.reasons AS reasons
FROM {db}.review_tasks AS t FINAL
INNER JOIN (SELECT note_id, max(revision) AS newest FROM {db}.extractions GROUP BY note_id) AS n
    ON n.note_id = t.note_id AND n.newest = t.revision;

-- Backlog per task: how many notes wait, and for how long the oldest has waited.
CREATE VIEW IF NOT EXISTS {db}.review_backlog AS
SELECT task, count() AS pending, min(queued_at) AS oldest_queued_at, dateDiff('second', min(queued_at), now64(3)) AS oldest_age_s
FROM (SELECT queued_at, arrayJoin(arrayDistinct(arrayMap(r -> r.task, reasons))) AS task FROM {db}.review_queue)
GROUP BY task;

-- Decisions per reviewer per day, and how many of them corrected the model.
CREATE VIEW IF NOT EXISTS {db}.review_throughput AS
SELECT toDate(decided_at) AS day, reviewer_id, count() AS decisions,
    countIf(arrayExists(c -> c.action != 'accept', changes)) AS with_corrections
FROM {db}.review_decisions FINAL
GROUP BY day, reviewer_id;

-- Model-reviewer agreement per task and label: the share of the model's items a reviewer kept as they were.
-- A reviewer-added span counts against its label (the model missed it).
CREATE VIEW IF NOT EXISTS {db}.review_agreement AS
SELECT c.task AS task, c.label AS label, count() AS items,
    countIf(c.action = 'accept') AS accepted,
    countIf(c.action IN ('reject_span', 'relabel_span', 'set_document_label')) AS corrected,
    countIf(c.action = 'add_span') AS added,
    round(countIf(c.action = 'accept') / count(), 4) AS agreement
FROM {db}.review_decisions FINAL
ARRAY JOIN changes AS c
GROUP BY task, label;
