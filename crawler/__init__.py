"""The web crawler (frontier, fetcher, robots.txt, politeness)."""
