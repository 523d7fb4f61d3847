from flywheel.cli.main import app

app(prog_name="flywheel")
