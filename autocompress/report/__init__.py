"""Everything a search leaves for people to read: CSV tables and the printed front."""
