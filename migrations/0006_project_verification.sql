-- What the finalizer's `verify` step says of a project's versions: the newest version that
-- passed it (a request whose checks still fail after its repair rounds goes back to it), and
-- whether the deployed version passed it (NULL: deployed before verification existed).
-- Never edit an applied migration: add the next numbered file instead.
ALTER TABLE projects ADD COLUMN last_verified_version text;
ALTER TABLE projects ADD COLUMN deployed_verified boolean;
