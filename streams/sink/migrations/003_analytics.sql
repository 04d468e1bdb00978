-- The analyst layer: counts over time and models compared. Every view reads the collapsed state
-- (FINAL / extractions_final), so replays never inflate a count.

-- Entity mentions per day (of the note), task and label, in each note's newest revision (reviewed if it was).
CREATE VIEW IF NOT EXISTS {db}.entity_counts_daily AS
SELECT toDate(created_at) AS day, e.task AS task, e.label AS label,
    count() AS mentions, uniqExact(note_id) AS notes, round(avg(e.confidence), 4) AS mean_confidence
FROM {db}.extractions_final
ARRAY JOIN entities AS e
GROUP BY day, task, label;

-- Notes per day, task and document label (the label with the highest probability).
CREATE VIEW IF NOT EXISTS {db}.document_labels_daily AS
SELECT day, task, label, count() AS notes
FROM
(
    SELECT toDate(created_at) AS day, d.task AS task,
        argMax(d.label, d.probability) AS label
    FROM {db}.extractions_final
    ARRAY JOIN doc_labels AS d
    GROUP BY day, note_id, task
)
GROUP BY day, task, label;

-- Each model version as it ran (revision 0: the model's own output, before review): what it saw, how
-- much it auto-accepted, how confident it was, and when it ran.
CREATE VIEW IF NOT EXISTS {db}.model_versions AS
SELECT task, model, count() AS notes,
    countIf(status = 'auto_accepted') AS auto_accepted,
    round(countIf(status = 'auto_accepted') / count(), 4) AS auto_accept_rate,
    round(avg(arrayCount(e -> e.task = task, entities)), 3) AS entities_per_note,
    round(avgIf(arrayAvg(arrayMap(e -> e.confidence, arrayFilter(e -> e.task = task, entities))),
        arrayExists(e -> e.task = task, entities)), 4) AS mean_entity_confidence,
    min(processed_at) AS first_seen, max(processed_at) AS last_seen
FROM
(
    SELECT note_id, status, entities, processed_at, m.1 AS task, m.2 AS model
    FROM {db}.extractions FINAL
    ARRAY JOIN CAST(models, 'Array(Tuple(String, String))') AS m
    WHERE revision = 0
)
GROUP BY task, model;

-- Reviewer-model agreement per model version: each change a reviewer made, attributed to the model
-- version whose output (the decision's base revision) was reviewed.
CREATE VIEW IF NOT EXISTS {db}.model_agreement AS
SELECT c.task AS task, x.models[c.task] AS model, count() AS items,
    countIf(c.action = 'accept') AS accepted,
    countIf(c.action IN ('reject_span', 'relabel_span', 'set_document_label')) AS corrected,
    countIf(c.action = 'add_span') AS added,
    round(countIf(c.action = 'accept') / count(), 4) AS agreement
FROM {db}.review_decisions AS r FINAL
ARRAY JOIN r.changes AS c
INNER JOIN (SELECT note_id, revision, models FROM {db}.extractions FINAL) AS x
    ON x.note_id = r.note_id AND x.revision = r.base_revision
GROUP BY task, model;
