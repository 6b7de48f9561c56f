-- Folds the counts back into one per login id (the highest), dropping the per-address rows.
DROP INDEX login_failures_client_addr;
DELETE FROM login_failures WHERE login_id = '';
DELETE FROM login_failures f USING login_failures g
 WHERE f.login_id = g.login_id AND f.client_addr <> g.client_addr
   AND (f.failures, f.client_addr) < (g.failures, g.client_addr);
ALTER TABLE login_failures DROP CONSTRAINT login_failures_pkey;
ALTER TABLE login_failures ADD PRIMARY KEY (login_id);
ALTER TABLE login_failures DROP COLUMN client_addr;
