"""fedarches test suite (a regular package, so that a site-packages ``tests`` of a dependency cannot shadow it)."""
