DROP TABLE returns;
