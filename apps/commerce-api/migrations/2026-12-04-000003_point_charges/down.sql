DROP TABLE point_charges;
