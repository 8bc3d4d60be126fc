from lwrcli.cli.main import main

main()
