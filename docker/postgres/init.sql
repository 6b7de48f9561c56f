-- Each app owns its database (CQRS: the collector never reads the API's tables).
CREATE DATABASE commerce;
CREATE DATABASE commerce_metrics;
CREATE DATABASE pg_simulator;
