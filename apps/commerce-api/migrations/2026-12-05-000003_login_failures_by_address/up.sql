-- Failed logins are counted per (login id, client address) and per client address, no longer
-- per login id alone: a stranger's wrong passwords for an account no longer block its owner
-- signing in from another address. An address's own row has login_id '' (any login id).
-- Counts kept before this (per login id alone) stay, under the unspecified address '::', which
-- no client has; they are purged a day after their last failure like every count.
ALTER TABLE login_failures ADD COLUMN client_addr TEXT NOT NULL DEFAULT '::';
ALTER TABLE login_failures ALTER COLUMN client_addr DROP DEFAULT;
ALTER TABLE login_failures DROP CONSTRAINT login_failures_pkey;
ALTER TABLE login_failures ADD PRIMARY KEY (login_id, client_addr);
CREATE INDEX login_failures_client_addr ON login_failures (client_addr) WHERE login_id = '';
