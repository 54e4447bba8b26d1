from fraudserve.cli import app

app(prog_name="fraudserve")
