-- transaction_mode => 'new' is carried out by the proxy for the one form it
-- can start at once; df.start itself only explains that form.
CREATE OR REPLACE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                                    transaction_mode text DEFAULT 'caller') RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  IF fut IS NULL THEN
    RAISE EXCEPTION 'df.start: the workflow is NULL' USING ERRCODE = '22004';
  END IF;
  CASE lower(coalesce(transaction_mode, 'caller'))
    WHEN 'caller' THEN
      RETURN df._submit(fut, label, database);
    WHEN 'new' THEN
      IF df._in_workflow() THEN
        RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' cannot be used inside a workflow' USING ERRCODE = '0A000';
      END IF;
      RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' needs its own connection, which only pg-durable-proxy can open'
        USING ERRCODE = '0A000',
        HINT = 'Through the proxy, send it as a statement of its own, as a simple query without bind parameters: '
               'SELECT df.start(''<workflow written out>'', ''<label>'', transaction_mode => ''new''). '
               'Or start the workflow in a transaction of its own.';
    ELSE
      RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''', transaction_mode
        USING ERRCODE = '22023';
  END CASE;
END
$$;
