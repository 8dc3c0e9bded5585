BBJ–]‹@µVûrx6ªˆ5XW
k”kBF[À