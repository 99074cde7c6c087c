/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dnsaccel: the BPF target's byte order is the one clang compiles for
 * (bpfel or bpfeb), not the build host's (see ../update.sh).
 */
#ifndef _ASM_BPF_BYTEORDER_H
#define _ASM_BPF_BYTEORDER_H

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#include <linux/byteorder/big_endian.h>
#else
#include <linux/byteorder/little_endian.h>
#endif

#endif
