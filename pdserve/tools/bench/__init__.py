"""``pdserve bench``: load generators and reports against any OpenAI endpoint."""
