-- The role pg-durable-proxy's executor logs in as, with the least it needs on
-- a managed PostgreSQL (no superuser anywhere). Run it as the database's
-- owner or your service's admin role, once per database the proxy serves:
--
--   psql "postgres://admin@db.example.com/app" \
--        -v executor=pgdp_executor -v password='...' -f sql/executor-role.sql
--
-- It creates (once per server) the login role, with:
--   LOGIN                      the executor connects as it (give the proxy its URL: --executor-url);
--   pg_signal_backend          to cancel a running step (a step runs as its submitter, not as the executor);
-- and in the database psql is connected to:
--   schema df, owned by it     the proxy installs its tables and functions there when df is first used
--                              (made here, or by the executor with CREATE on the database, see below);
--   CREATE on schema public    for the DSL operators (~> |=> & | ?> !> @>), which live in public so that
--                              pg_dump dumps them and every search_path with public finds them; optional
--                              (without it, DO blocks, triggers and direct clients use df.seq(...) etc.).
-- Nothing else: no CREATEDB, no CREATEROLE, no membership in your application roles. Steps log in as
-- their submitters with their own credentials (--step-passfile, --step-cert-dir).
-- Without -v password, the role is created without one (set it with \password, or use certificates).
\set ON_ERROR_STOP on
\if :{?executor}
\else
  \set executor pgdp_executor
\endif

SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'executor') AS create_role \gset
\if :create_role
  \if :{?password}
    CREATE ROLE :"executor" LOGIN PASSWORD :'password';
  \else
    CREATE ROLE :"executor" LOGIN;
  \endif
\else
  ALTER ROLE :"executor" LOGIN;
  \if :{?password}
    ALTER ROLE :"executor" PASSWORD :'password';
  \endif
\endif
SELECT NOT pg_catalog.pg_has_role(:'executor', 'pg_signal_backend', 'MEMBER') AS grant_signal \gset
\if :grant_signal
  GRANT pg_signal_backend TO :"executor";
\endif

-- Schema df for it: made here if this role may make a schema owned by it (a superuser, or a member of
-- it); else it gets CREATE on the database and makes df itself when df is first used.
SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'df') AS no_schema,
       pg_catalog.pg_has_role(:'executor', 'MEMBER') AS may_own,
       pg_catalog.current_database() AS database \gset
\if :no_schema
  \if :may_own
    CREATE SCHEMA df AUTHORIZATION :"executor";
  \else
    GRANT CREATE ON DATABASE :"database" TO :"executor";
  \endif
\endif
GRANT CREATE ON SCHEMA public TO :"executor";
