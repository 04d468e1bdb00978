-- Item-level routing (Extraction schema v3, ReviewTask v2): every entity and document label has its own state.
-- entity_state[i] is the state of entities[i]; label_state[task] that of the task's document label. Rows written
-- before v3 have none and read, in the views below, as their note's status said (auto_accepted: accepted,
-- pending_review: pending, reviewed: reviewed).
ALTER TABLE {db}.extractions ADD COLUMN IF NOT EXISTS entity_state Array(LowCardinality(String)) AFTER entity_context;
ALTER TABLE {db}.extractions ADD COLUMN IF NOT EXISTS label_state Map(String, LowCardinality(String)) AFTER entity_state;

-- audit: chosen at random, every accepted item is checked; priority: expected corrections (the queue's order)
ALTER TABLE {db}.review_tasks ADD COLUMN IF NOT EXISTS audit Bool DEFAULT false AFTER created_at;
ALTER TABLE {db}.review_tasks ADD COLUMN IF NOT EXISTS priority Float32 DEFAULT 0 AFTER audit;

-- views over `*` keep the columns they were created with: made again
CREATE OR REPLACE VIEW {db}.extractions_final AS
SELECT *
FROM {db}.extractions FINAL
ORDER BY note_id, revision DESC
LIMIT 1 BY note_id;

CREATE OR REPLACE VIEW {db}.review_queue AS
SELECT t.note_id AS note_id, t.revision AS revision, t.note_type AS note_type, t.created_at AS queued_at,
    t.audit AS audit, t.priority AS priority, t.reasons AS reasons
FROM {db}.review_tasks AS t FINAL
INNER JOIN (SELECT note_id, max(revision) AS newest FROM {db}.extractions GROUP BY note_id) AS n
    ON n.note_id = t.note_id AND n.newest = t.revision;

-- Every item of each note's newest revision with its state: what analysts can use at once (accepted, reviewed),
-- what waits (pending), what the budget let through unreviewed (over_budget).
CREATE VIEW IF NOT EXISTS {db}.items AS
SELECT note_id, revision, status, tupleElement(e, 'task') AS task, 'entity' AS kind, tupleElement(e, 'label') AS label,
    toNullable(tupleElement(e, 'start')) AS start, toNullable(tupleElement(e, 'end')) AS end,
    tupleElement(e, 'text') AS text, tupleElement(e, 'confidence') AS confidence,
    if(s != '', s, multiIf(status = 'auto_accepted', 'accepted', status = 'reviewed', 'reviewed', 'pending')) AS state,
    models[task] AS model, processed_at
FROM
(
    SELECT note_id, revision, status, models, processed_at,
        arrayJoin(arrayEnumerate(entities)) AS i, entities[i] AS e, entity_state[i] AS s
    FROM {db}.extractions_final
)
UNION ALL
SELECT note_id, revision, status, t AS task, 'document_label' AS kind,
    arrayFilter(d -> d.task = t, doc_labels)[1].label AS label, CAST(NULL, 'Nullable(UInt32)') AS start,
    CAST(NULL, 'Nullable(UInt32)') AS end, '' AS text, arrayFilter(d -> d.task = t, doc_labels)[1].probability AS confidence,
    if(label_state[t] != '', label_state[t], multiIf(status = 'auto_accepted', 'accepted', status = 'reviewed', 'reviewed', 'pending')) AS state,
    models[t] AS model, processed_at
FROM
(
    SELECT note_id, revision, status, models, processed_at, label_state,
        arraySort(d -> -d.probability, doc_labels) AS doc_labels, arrayJoin(arrayDistinct(arrayMap(d -> d.task, doc_labels))) AS t
    FROM {db}.extractions_final
);

-- The review load per day of processing, from the model's revision: notes, notes with any flagged item, flagged items
-- (an entity counts once however many of its decisions were flagged; a possible missed entity and a document label
-- count one each), audits.
CREATE VIEW IF NOT EXISTS {db}.review_load AS
SELECT toDate(x.processed_at) AS day, count() AS notes,
    countIf(t.items > 0) AS notes_flagged,
    round(countIf(t.items > 0) / count(), 4) AS flagged_share,
    sum(t.items) AS flagged_items,
    round(sum(t.items) / count(), 3) AS flagged_items_per_note,
    countIf(t.audit) AS audited
FROM (SELECT note_id, processed_at FROM {db}.extractions FINAL WHERE revision = 0) AS x
LEFT JOIN
(
    SELECT note_id, audit,
        length(arrayDistinct(arrayMap(r -> (r.task, if(r.kind IN ('entity', 'code', 'assertion'), 'entity', r.kind), r.start, r.end),
            reasons))) AS items
    FROM {db}.review_tasks FINAL
    WHERE revision = 0
) AS t ON t.note_id = x.note_id
GROUP BY day;

-- The live precision of auto-accepted items, from audits: in an audited note the reviewer checks every item the model
-- accepted, so the share kept as it was estimates the precision of everything auto-accepted (per task, label and
-- model version), with a 95% Wilson interval. A reviewer's decision records each item's state before review
-- (before.state); a span deleted or relabelled, or a document label changed, counts as wrong. label = '' is the
-- task's row over all its labels.
CREATE VIEW IF NOT EXISTS {db}.auto_precision AS
SELECT task, label, model, items, correct,
    round(correct / items, 4) AS precision,
    round((p + z * z / (2 * items) - z * sqrt(p * (1 - p) / items + z * z / (4 * items * items))) / (1 + z * z / items), 4) AS lower,
    round((p + z * z / (2 * items) + z * sqrt(p * (1 - p) / items + z * z / (4 * items * items))) / (1 + z * z / items), 4) AS upper
FROM
(
    SELECT c.task AS task, c.label AS label, x.models[c.task] AS model, count() AS items,
        countIf(c.action = 'accept') AS correct, correct / items AS p, 1.959964 AS z
    FROM {db}.review_decisions AS r FINAL
    ARRAY JOIN r.changes AS c
    INNER JOIN (SELECT note_id, revision FROM {db}.review_tasks FINAL WHERE audit) AS a
        ON a.note_id = r.note_id AND a.revision = r.base_revision
    INNER JOIN (SELECT note_id, revision, models FROM {db}.extractions FINAL) AS x
        ON x.note_id = r.note_id AND x.revision = r.base_revision
    WHERE c.action IN ('accept', 'reject_span', 'relabel_span', 'set_document_label')
        AND JSONExtractString(ifNull(c.before, '{}'), 'state') = 'accepted'
    GROUP BY GROUPING SETS ((task, label, model), (task, model))
);
