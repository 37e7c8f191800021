"""Reading a class out of an answer (keyword matching) and classification metrics: shared by train/, eval/ and serve/."""
