DROP TABLE event_handled;
