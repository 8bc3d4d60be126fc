from lwrcli.cli import main

main()
