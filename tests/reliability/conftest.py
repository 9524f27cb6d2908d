"""The reliability tier: real servers driven the way slow, broken and hostile clients drive them."""
