"""Person Import: reading, rules and store, custom fields, phones and the carrier lookup."""
