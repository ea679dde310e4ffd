"""One blueprint per module; the factory registers each module's ``bp``."""
