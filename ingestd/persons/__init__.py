"""Person Import: the rules of a file's rows and the company's persons tables."""
