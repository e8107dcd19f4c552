"""The course's models, one file per paper."""
