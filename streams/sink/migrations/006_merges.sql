-- The sink writes a part per table for every batch: tens of rows, several times a second. With ClickHouse's default
-- merge_selector_base (5) the background merges rewrote those small parts so often that they cost more CPU per note
-- than the insert itself (embedded chdb, batches of 16 notes: 0.31 ms of merging per note, 0.14 with 10). A larger
-- base merges more parts at once and rewrites each row fewer times; a table keeps a few more parts between merges.
ALTER TABLE {db}.extractions MODIFY SETTING merge_selector_base = 10;
ALTER TABLE {db}.review_tasks MODIFY SETTING merge_selector_base = 10;
