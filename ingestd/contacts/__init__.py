"""Subject contacts (CSV): reading, rules, SQL and sidecars."""
