"""Reference services measured beside TagIfAI in `make bench`, so its figures come with ratios."""
