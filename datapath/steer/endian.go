package steer

import "encoding/binary"

// nativeEndian is the byte order of the maps' integers.
var nativeEndian = binary.NativeEndian
