-- Temporal's databases beside mdmflow's own (POSTGRES_DB). The postgres image runs this
-- once, when it initialises an empty data volume; deploy/temporal/setup-schema.sh then
-- creates and upgrades the tables on every start.
CREATE DATABASE temporal;
CREATE DATABASE temporal_visibility;
