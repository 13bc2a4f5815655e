"""placeholder: attacks being written."""
