By0J
@wJ”¯dyl[ 