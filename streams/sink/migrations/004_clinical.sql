-- Clinical meaning per entity (Extraction schema v2): aligned index by index with `entities` (entity_context[i]
-- describes entities[i]); rows written before v2 have an empty array and read as present, no section, no code.
ALTER TABLE {db}.extractions ADD COLUMN IF NOT EXISTS entity_context
    Array(Tuple(assertion String, assertion_cue Nullable(String), section Nullable(String),
        codes Array(Tuple(system String, code String, display String, score Float32))))
    AFTER entities;

-- a view over `*` keeps the columns it was created with: made again so it has entity_context
CREATE OR REPLACE VIEW {db}.extractions_final AS
SELECT *
FROM {db}.extractions FINAL
ORDER BY note_id, revision DESC
LIMIT 1 BY note_id;

-- The OMOP CDM NOTE_NLP table's shape: one row per entity of each note's final revision.
-- term_exists: 'N' when the mention is absent, possible or hypothetical (OMOP's definition), else 'Y';
-- term_temporal: 'past' for historical mentions; term_modifiers: the assertion and its cue.
CREATE VIEW IF NOT EXISTS {db}.note_nlp AS
SELECT
    note_id,
    patient_id,
    encounter_id,
    revision,
    tupleElement(e, 'task') AS task,
    tupleElement(e, 'label') AS label,
    tupleElement(e, 'start') AS `offset`,
    tupleElement(e, 'end') AS offset_end,
    tupleElement(e, 'text') AS lexical_variant,
    substring(text, greatest(toInt64(`offset`) - 60, 0) + 1,
        least(toInt64(offset_end) + 60, toInt64(length(text))) - greatest(toInt64(`offset`) - 60, 0)) AS snippet,
    tupleElement(c, 'section') AS section,
    if(tupleElement(c, 'assertion') = '', 'present', tupleElement(c, 'assertion')) AS assertion,
    tupleElement(c, 'assertion_cue') AS assertion_cue,
    if(assertion IN ('absent', 'possible', 'hypothetical'), 'N', 'Y') AS term_exists,
    if(assertion = 'historical', 'past', '') AS term_temporal,
    concat('assertion=', assertion, if(isNull(assertion_cue), '', concat(',cue=', assumeNotNull(assertion_cue)))) AS term_modifiers,
    tupleElement(c, 'codes') AS code_candidates,
    if(empty(code_candidates), '', 'ICD10CM') AS code_system,
    if(empty(code_candidates), '', tupleElement(code_candidates[1], 'code')) AS code,
    if(empty(code_candidates), '', tupleElement(code_candidates[1], 'display')) AS code_display,
    if(empty(code_candidates), toFloat32(0), tupleElement(code_candidates[1], 'score')) AS code_score,
    models[task] AS nlp_system,
    processed_at AS nlp_date,
    status,
    tupleElement(e, 'confidence') AS confidence
FROM
(
    SELECT note_id, patient_id, encounter_id, revision, text, models, processed_at, status,
        arrayJoin(arrayEnumerate(entities)) AS i, entities[i] AS e, entity_context[i] AS c
    FROM {db}.extractions_final
);

-- Per patient and ICD-10-CM category: the present mentions about the patient (not absent, possible, hypothetical or
-- a family member's) whose code is sure enough to group by (score >= 0.7, the default code_threshold below which a
-- code goes to review; a reviewer's code scores 1), with first and last seen (the notes' dates).
CREATE VIEW IF NOT EXISTS {db}.patient_problems AS
SELECT
    n.patient_id AS patient_id,
    substring(n.code, 1, 3) AS category,
    any(n.code_display) AS example_display,
    groupUniqArray(5)(n.code) AS codes,
    count() AS mentions,
    uniqExact(n.note_id) AS notes,
    countIf(n.assertion = 'historical') AS historical_mentions,
    min(x.created_at) AS first_seen,
    max(x.created_at) AS last_seen
FROM {db}.note_nlp AS n
INNER JOIN (SELECT note_id, created_at FROM {db}.extractions_final) AS x ON x.note_id = n.note_id
WHERE n.code != '' AND n.code_score >= 0.7 AND n.assertion IN ('present', 'historical')
GROUP BY patient_id, category;
