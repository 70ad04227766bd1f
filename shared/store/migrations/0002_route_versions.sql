-- Each move of a route bumps its version; the route table in KV slipway_routes is written
-- only forward in versions, so a late writer never rolls an edge back.
ALTER TABLE frontline_routes ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
