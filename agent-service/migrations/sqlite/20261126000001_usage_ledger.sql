-- The usage ledger: one row per LLM call (kind 'llm') and tool call (kind 'tool'), written from the
-- status-log entries the client receives. `day` is the UTC date (YYYY-MM-DD) the call ended.
CREATE TABLE usage_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    session_id TEXT,
    kind TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    tool TEXT,
    prompt_chars INTEGER NOT NULL DEFAULT 0,
    response_chars INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    output_length INTEGER,
    duration_ms INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT,
    day TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX usage_events_user_day ON usage_events (user_id, day);
CREATE INDEX usage_events_day ON usage_events (day);
