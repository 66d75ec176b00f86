-- The populate example over examples/events.csv: a materialized node that counts events and sums sales per day.
-- Run it partition by partition (one query per day) into data source `events_by_day`:
--   jobsctl populate --pipe events_by_day --source events --datasource events_by_day \
--       --sql "$(cat examples/events_by_day.sql)" --partition-by date --watch
SELECT date, event, count() AS events, round(sum(price), 2) AS amount
FROM events
GROUP BY date, event
