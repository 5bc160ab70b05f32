from packer.runtime.main import main

main()
