"""The sim engine (a test and benchmark tool): see engine.py for the model it follows."""
