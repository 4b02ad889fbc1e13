"""What tests share: helpers live here, so no test module imports another's privates."""
