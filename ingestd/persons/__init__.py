"""Person Import: reading, rules, custom fields, phones and the carrier lookup."""
