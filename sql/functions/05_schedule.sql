-- Checks for df.wait_for_schedule, so that a bad schedule is refused when the
-- workflow is built, in plain SQL as through the proxy. The rules and the
-- reasons are those of src/schedule/cron.ts (compared by
-- test/integration/cron-sql.test.ts); the executor computes the ticks.

-- NULL when expr is a valid 5-field cron expression, else why not:
-- minute hour day-of-month month day-of-week, each `*`, n, a-b, */s or a-b/s
-- or a comma list of these; JAN-DEC and SUN-SAT in any case, day of week 0-7
-- (Sunday 0 or 7); @yearly @annually @monthly @weekly @daily @midnight
-- @hourly. Steps run from 1 to the field's count of values (7 for the week).
-- With day-of-week a bare `*`, day-of-month must name a day the months have.
CREATE OR REPLACE FUNCTION df._cron_error(expr text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  field constant text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
  lo constant int[] := ARRAY[0, 0, 1, 1, 0];
  hi constant int[] := ARRAY[59, 23, 31, 12, 7];
  max_step constant int[] := ARRAY[60, 24, 31, 12, 7];
  months constant text[] := ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
  days constant text[] := ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
  month_days constant int[] := ARRAY[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  e text := pg_catalog.btrim(expr, E' \t\r\n');
  f text[];
  el text;
  m text[];
  tok text;
  v numeric;
  a numeric;
  b numeric;
  step text;
  min_dom numeric := 32;
  longest_month int := 0;
BEGIN
  IF expr IS NULL THEN
    RETURN 'the expression is NULL';
  END IF;
  -- Bounded: the executor evaluates it at every tick, on a loop it shares with everyone.
  IF pg_catalog.length(expr) > 256 THEN
    RETURN 'the expression is longer than 256 characters';
  END IF;
  IF pg_catalog.left(e, 1) = '@' THEN
    CASE pg_catalog.lower(e)
      WHEN '@yearly', '@annually' THEN e := '0 0 1 1 *';
      WHEN '@monthly' THEN e := '0 0 1 * *';
      WHEN '@weekly' THEN e := '0 0 * * 0';
      WHEN '@daily', '@midnight' THEN e := '0 0 * * *';
      WHEN '@hourly' THEN e := '0 * * * *';
      WHEN '@reboot' THEN RETURN '@reboot is not supported';
      ELSE RETURN pg_catalog.format('unknown macro ''%s'' (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)', e);
    END CASE;
  END IF;
  f := CASE WHEN e = '' THEN '{}'::text[] ELSE pg_catalog.regexp_split_to_array(e, E'[ \t\r\n]+') END;
  IF pg_catalog.cardinality(f) <> 5 THEN
    RETURN pg_catalog.format('expected 5 fields (minute hour day-of-month month day-of-week) but found %s', pg_catalog.cardinality(f))
      || CASE WHEN pg_catalog.cardinality(f) IN (6, 7) THEN ': fields for seconds or years are not supported' ELSE '' END;
  END IF;
  FOR i IN 1..5 LOOP
    FOREACH el IN ARRAY pg_catalog.string_to_array(f[i], ',') LOOP
      IF el = '' THEN
        RETURN pg_catalog.format('%s ''%s'' has an empty list element', field[i], f[i]);
      END IF;
      -- Groups: the step of `*`, start, end, the step of a range.
      m := pg_catalog.regexp_match(el, '^(?:\*(?:/([0-9]+))?|([0-9]+|[A-Za-z]+)(?:-([0-9]+|[A-Za-z]+)(?:/([0-9]+))?)?)$');
      IF m IS NULL THEN
        RETURN pg_catalog.format('%s ''%s'' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)', field[i], el);
      END IF;
      a := lo[i];
      b := hi[i];
      FOR k IN 2..3 LOOP
        tok := m[k];
        CONTINUE WHEN tok IS NULL;
        v := CASE WHEN tok ~ '^[0-9]+$' THEN tok::numeric
                  WHEN i = 4 THEN pg_catalog.array_position(months, pg_catalog.upper(tok))
                  WHEN i = 5 THEN pg_catalog.array_position(days, pg_catalog.upper(tok)) - 1 END;
        IF v IS NULL THEN
          RETURN pg_catalog.format('%s ''%s'' is not %s', field[i], tok,
            CASE i WHEN 4 THEN 'a month name (JAN-DEC)' WHEN 5 THEN 'a day name (SUN-SAT)' ELSE 'a number' END);
        END IF;
        IF v < lo[i] OR v > hi[i] THEN
          RETURN pg_catalog.format('%s %s is out of range %s-%s', field[i], tok, lo[i], hi[i]);
        END IF;
        IF k = 2 THEN
          a := v;
        END IF;
        b := v;
      END LOOP;
      IF a > b THEN
        RETURN pg_catalog.format('%s range %s-%s starts after it ends', field[i], m[2], m[3]);
      END IF;
      step := coalesce(m[1], m[4]);
      IF step::numeric < 1 OR step::numeric > max_step[i] THEN
        RETURN pg_catalog.format('%s step %s is out of range 1-%s', field[i], step, max_step[i]);
      END IF;
      IF i = 3 THEN
        min_dom := LEAST(min_dom, a);
      ELSIF i = 4 THEN
        SELECT GREATEST(longest_month, pg_catalog.max(month_days[x])) INTO longest_month
        FROM pg_catalog.generate_series(a::int, b::int, coalesce(step::int, 1)) AS x;
      END IF;
    END LOOP;
  END LOOP;
  IF f[5] = '*' AND f[3] <> '*' AND min_dom > longest_month THEN
    RETURN pg_catalog.format('it never fires: day-of-month ''%s'' does not occur in month ''%s''', f[3], f[4]);
  END IF;
  RETURN NULL;
END
$$;

-- NULL when tz is NULL (UTC) or a time zone name PostgreSQL knows, in any
-- case, else the message. Not Factory, tzdata's zone for machines not set up,
-- which the executor's ICU does not have.
CREATE OR REPLACE FUNCTION df._tz_error(tz text) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  -- A system time-zone database (Debian's PostgreSQL) also lists localtime, posixrules and the
  -- posix/ and right/ copies, which the executor's runtime does not take: refused here too.
  SELECT CASE WHEN tz IS NULL OR pg_catalog.lower(tz) NOT IN ('factory', 'localtime', 'posixrules')
      AND pg_catalog.lower(tz) !~ '^(posix|right)/' AND EXISTS (
      SELECT FROM pg_catalog.pg_timezone_names WHERE pg_catalog.lower(name) = pg_catalog.lower(tz))
    THEN NULL
    ELSE pg_catalog.format('Invalid time zone ''%s'': use an IANA name such as ''Europe/Paris'' or ''UTC''', tz) END
$$;
