from llama4ctl.cli.app import main

main()
