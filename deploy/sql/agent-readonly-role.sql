-- Least-privilege PostgreSQL role for agent-service (its DATABASE_URL).
--
-- The agent only reads: the News Nexus content tables its tools use, and four columns of "Users".
-- This role can do nothing else, so even a query that got past the agent's SQL guard and its
-- per-query READ ONLY transaction could not write, read a password hash or e-mail address, or
-- read another table. Run it as the database owner in the News Nexus database, then give the
-- role a password and use it in the agent's DATABASE_URL:
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f deploy/sql/agent-readonly-role.sql
--   psql "$ADMIN_URL" -c "ALTER ROLE newsnexus_agent PASSWORD '<secret>'"
--   DATABASE_URL=postgres://newsnexus_agent:<secret>@db:5432/newsnexus
--
-- Keep the grants in step with AGENT_SQL_TABLES (see SECURITY.md). Re-running the file is safe.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'newsnexus_agent') THEN
    CREATE ROLE newsnexus_agent LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION;
  END IF;
END
$$;

ALTER ROLE newsnexus_agent SET default_transaction_read_only = on;
ALTER ROLE newsnexus_agent SET statement_timeout = '5s';
ALTER ROLE newsnexus_agent SET idle_in_transaction_session_timeout = '30s';

-- Temporary files: the agent sets work_mem = 4MB per custom query, so larger sorts and hashes
-- spill to disk; temp_file_limit caps the disk one query may use. PostgreSQL lets only a
-- superuser set it (also for a role), so this step runs only when the script does; otherwise
-- have a superuser run:
--   ALTER ROLE newsnexus_agent SET temp_file_limit = '256MB';
DO $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    ALTER ROLE newsnexus_agent SET temp_file_limit = '256MB';
  ELSE
    RAISE NOTICE 'temp_file_limit not set: a superuser must run ALTER ROLE newsnexus_agent SET temp_file_limit = ''256MB''';
  END IF;
END
$$;

-- Nothing but what is granted below.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM newsnexus_agent;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM newsnexus_agent;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM newsnexus_agent;
REVOKE CREATE ON SCHEMA public FROM newsnexus_agent;
GRANT USAGE ON SCHEMA public TO newsnexus_agent;

-- The content tables the tools read.
GRANT SELECT ON "Articles", "ArticleApproveds" TO newsnexus_agent;
-- Users: only these columns (never "password", "email" or any token).
GRANT SELECT ("id", "username", "isAdmin", "createdAt") ON "Users" TO newsnexus_agent;
