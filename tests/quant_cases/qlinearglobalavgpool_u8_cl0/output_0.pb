By0J
¥‹‘vŠaUjxz