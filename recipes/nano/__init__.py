"""The nano recipe: builds the small SANA-SR that ships in sanasr_cli/models/nano/ from real photos on a CPU."""
