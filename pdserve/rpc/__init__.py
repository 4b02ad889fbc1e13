"""gRPC plumbing shared by the workers: server lifecycle and the one error→status map."""
