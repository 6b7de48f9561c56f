DROP TABLE partner_sales;
