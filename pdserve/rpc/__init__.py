"""Wire ⇄ domain conversion shared by the workers and the router (pdserve.v1 messages)."""
