; fingerprintd's default signature database.
;
; The TCP and MTU signatures below are the facts of p0f 3.09b's database
; (p0f by Michal Zalewski, LGPL-2.1), in p0f v3 syntax and in the same order,
; plus fingerprintd's additions for today's stacks, each marked and sourced.
; See README.md here for credits, the format, and how to add a signature.
; HTTP sections are left out: fingerprintd fingerprints TCP only. p0f 3.09b
; itself loads this file (p0f -f signatures/p0f.fp).

classes = win,unix,other

; --------------------------------------------------------------------------
; Link types by MTU (MSS + 40 for IPv4, + 60 for IPv6).
; --------------------------------------------------------------------------

[mtu]

label = Ethernet or modem
sig   = 576
sig   = 1500

label = DSL
sig   = 1452
sig   = 1454
sig   = 1492

label = GIF
sig   = 1240
sig   = 1280

label = generic tunnel or VPN
sig   = 1300
sig   = 1400
sig   = 1420
sig   = 1440
sig   = 1450
sig   = 1460

label = IPSec or GRE
sig   = 1476

label = IPIP or SIT
sig   = 1480

label = PPTP
sig   = 1490

label = AX.25 radio modem
sig   = 256

label = SLIP
sig   = 552

label = Google
sig   = 1470

label = VLAN
sig   = 1496

label = Ericsson HIS modem
sig   = 1656

label = jumbo Ethernet
sig   = 9000

label = loopback
sig   = 3924
sig   = 16384
sig   = 16436
; --------------------------------------------------------------------------
; Client SYNs. First exact specific line wins, then the first exact generic
; line, then the first fuzzy one; keep specific lines above wildcard ones.
; --------------------------------------------------------------------------

[tcp:request]

; --- fingerprintd additions (not in p0f 3.09b) -------------------------------
; Linux 4.19+ (commit "tcp: up initial rmem to 128KB and SYN rwin to around
; 64KB"): the SYN window is the largest multiple of the MSS under 65535, so
; the multiplier follows the MSS: 44 for 1460 (IPv4 Ethernet), 45 for 1440
; (IPv6) and 1452, 46 for 1400-1420, 47 for 1380, 48 for 1340-1360. The scale
; follows net.ipv4.tcp_rmem's maximum: 7 for the usual 6 MB, up to 10.
; Sources: real Linux 6.18 SYNs captured in network namespaces by
; tests/netns.py (IPv4 and IPv6, MTU 1400/1500/9000, tcp_rmem varied); the
; labeled captures ndpi__ocsp, ndpi__xss and slips__malicious-ssh-bruteforce
; (Linux, 64240 with scale 7); peace-maker's p0f table ("Linux 4.x and newer").
label = s:unix:Linux:4.19 and newer
sig   = *:64:0:*:mss*44,7:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*44,8:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*44,9:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*44,10:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*45,7:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*45,8:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*45,9:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*45,10:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*46,7:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*46,8:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*46,9:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*46,10:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*47,7:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*47,8:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*47,9:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*47,10:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*48,7:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*48,8:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*48,9:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*48,10:mss,sok,ts,nop,ws:df,id+:0
; The same kernels with options switched off by sysctl (tcp_timestamps,
; tcp_sack, tcp_window_scaling: 0), and on 9000-byte jumbo frames (MSS 8960,
; or 8940 over IPv6: 7 segments). Source: real Linux 6.18 SYNs of those
; variants captured by tests/netns.py (IPv4 and IPv6).
sig   = *:64:0:*:mss*44,*:mss,nop,nop,sok,nop,ws:df,id+:0
sig   = *:64:0:*:mss*45,*:mss,nop,nop,sok,nop,ws:df,id+:0
sig   = *:64:0:*:mss*46,*:mss,nop,nop,sok,nop,ws:df,id+:0
sig   = *:64:0:*:mss*47,*:mss,nop,nop,sok,nop,ws:df,id+:0
sig   = *:64:0:*:mss*48,*:mss,nop,nop,sok,nop,ws:df,id+:0
sig   = *:64:0:*:mss*44,*:mss,nop,nop,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*45,*:mss,nop,nop,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*46,*:mss,nop,nop,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*47,*:mss,nop,nop,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*48,*:mss,nop,nop,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*44,0:mss,sok,ts:df,id+:0
sig   = *:64:0:*:mss*45,0:mss,sok,ts:df,id+:0
sig   = *:64:0:*:mss*46,0:mss,sok,ts:df,id+:0
sig   = *:64:0:*:mss*47,0:mss,sok,ts:df,id+:0
sig   = *:64:0:*:mss*48,0:mss,sok,ts:df,id+:0
sig   = *:64:0:*:mss*44,0:mss:df,id+:0
sig   = *:64:0:*:mss*45,0:mss:df,id+:0
sig   = *:64:0:*:mss*46,0:mss:df,id+:0
sig   = *:64:0:*:mss*47,0:mss:df,id+:0
sig   = *:64:0:*:mss*48,0:mss:df,id+:0
sig   = 4:64:0:8960:mss*7,*:mss,sok,ts,nop,ws:df,id+:0
sig   = 6:64:0:8940:mss*7,*:mss,sok,ts,nop,ws::0
; --- end of fingerprintd additions -----------------------------------------

; Linux 3.11+: initial window 10 segments -> mss*20 with the usual rmem.
label = s:unix:Linux:3.11 and newer
sig   = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*20,7:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:3.1-3.10
sig   = *:64:0:*:mss*10,4:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*10,5:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*10,6:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*10,7:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:2.6.x
sig   = *:64:0:*:mss*4,6:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*4,7:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*4,8:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:2.4.x
sig   = *:64:0:*:mss*4,0:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*4,1:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*4,2:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:2.2.x
sig   = *:64:0:*:mss*11,0:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*20,0:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*22,0:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:2.0
sig   = *:64:0:*:mss*12,0:mss::0
sig   = *:64:0:*:16384,0:mss::0

; Linux over loopback: MSS 16396 (MTU 16436) or 65495 (MTU 65535).
label = s:unix:Linux:3.x (loopback)
sig   = *:64:0:16396:mss*2,4:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:16376:mss*2,4:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:2.6.x (loopback)
sig   = *:64:0:16396:mss*2,2:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:16376:mss*2,2:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:2.4.x (loopback)
sig   = *:64:0:16396:mss*2,0:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:2.2.x (loopback)
sig   = *:64:0:3884:mss*8,0:mss,sok,ts,nop,ws:df,id+:0

label = s:unix:Linux:2.6.x (Google crawler)
sig   = 4:64:0:1430:mss*4,6:mss,sok,ts,nop,ws::0

label = s:unix:Linux:(Android)
sig   = *:64:0:*:mss*44,1:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:mss*44,3:mss,sok,ts,nop,ws:df,id+:0

; --- fingerprintd additions (not in p0f 3.09b) -------------------------------
; Android 8 and newer: the Linux option order with a SYN window of exactly
; 65535 (Android's init-rwnd, not rounded to the MSS as upstream 4.19+ does),
; scale 7 to 10. A desktop Linux with a hand-raised initial window can send
; the same; the labeled corpus has two such "Linux" hosts (ndpi__conncheck).
; Sources: labeled captures ndpi__alexa-app, ndpi__android, ndpi__waze,
; ndpi__sites, ndpi__mpeg-dash, ndpi__xiaomi, ndpi__http_ua_splitted_in_two_pkts
; (Android by User-Agent); zardaxt's 2021 GPL-2.0 records (Android 8-10 UAs:
; 65535 with scale 7, 8 and 9); huginn-net's table (65535 with 6 and 8).
label = s:unix:Linux:Android 8 and newer
sig   = *:64:0:*:65535,7:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:65535,8:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:65535,9:mss,sok,ts,nop,ws:df,id+:0
sig   = *:64:0:*:65535,10:mss,sok,ts,nop,ws:df,id+:0
; --- end of fingerprintd additions -----------------------------------------

; Generic Linux fallbacks for shapes the specific lines above miss.
label = g:unix:Linux:3.x
sig   = *:64:0:*:mss*10,*:mss,sok,ts,nop,ws:df,id+:0

label = g:unix:Linux:2.4.x-2.6.x
sig   = *:64:0:*:mss*4,*:mss,sok,ts,nop,ws:df,id+:0

label = g:unix:Linux:2.2.x-3.x
sig   = *:64:0:*:*,*:mss,sok,ts,nop,ws:df,id+:0

label = g:unix:Linux:2.2.x-3.x (no timestamps)
sig   = *:64:0:*:*,*:mss,nop,nop,sok,nop,ws:df,id+:0

label = g:unix:Linux:2.2.x-3.x (barebone)
sig   = *:64:0:*:*,0:mss:df,id+:0

; --- fingerprintd additions (not in p0f 3.09b) -------------------------------
; Windows 10 and 11 (and Server 2016+, which sends the same SYN): window
; 64240 (44 x 1460, whatever the MSS) or 65535, scale 8. p0f 3.09b calls these
; the generic "NT kernel" (or "NT kernel 5.x", the XP era, for 65535).
; Sources: labeled captures ndpi__emotet (a Windows 10 spambot's SMTP session),
; ndpi__http-proxy, ndpi__http_asymmetric, ndpi__http_connect, ndpi__trickbot
; (Windows 10/11 by their User-Agents); huginn-net's and peace-maker's tables.
label = s:win:Windows:10 or 11
sig   = *:128:0:*:mss*44,8:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,8:mss,nop,ws,nop,nop,sok:df,id+:0

; Windows XP/2003 without window scaling (its default) on a fast link: 64240,
; whatever the MSS. Vista and later always offer window scaling.
; Sources: chrissanders__aurora, chrissanders__ppa2e_aurora,
; chrissanders__ppa2e_twitter_tweet (XP by User-Agent), id2t__sality_botnet
; (an XP-family bot in a VirtualBox sandbox).
label = s:win:Windows:XP
sig   = *:128:0:*:64240,0:mss,nop,nop,sok:df,id+:0
; --- end of fingerprintd additions -----------------------------------------

; Windows NT 5.x and 6.x stacks: no timestamps, NOPs around WS and SACK-OK.
label = s:win:Windows:XP
sig   = *:128:0:*:16384,0:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,0:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,0:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,1:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,2:mss,nop,ws,nop,nop,sok:df,id+:0

label = s:win:Windows:7 or 8
sig   = *:128:0:*:8192,0:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:8192,2:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:8192,2:mss,nop,ws,sok,ts:df,id+:0

label = s:win:Windows:7 (Websense crawler)
sig   = *:64:0:1380:mss*4,6:mss,nop,nop,ts,nop,ws:df,id+:0
sig   = *:64:0:1380:mss*4,7:mss,nop,nop,ts,nop,ws:df,id+:0

label = g:win:Windows:NT kernel 5.x
sig   = *:128:0:*:16384,*:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,*:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:16384,*:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,*:mss,nop,ws,nop,nop,sok:df,id+:0

label = g:win:Windows:NT kernel 6.x
sig   = *:128:0:*:8192,*:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:8192,*:mss,nop,ws,nop,nop,sok:df,id+:0

label = g:win:Windows:NT kernel
sig   = *:128:0:*:*,*:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:*,*:mss,nop,ws,nop,nop,sok:df,id+:0

; Apple stacks: timestamps and a trailing EOL pad.
label = s:unix:Mac OS X:10.x
sig   = *:64:0:*:65535,1:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0
sig   = *:64:0:*:65535,3:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0

label = s:unix:MacOS X:10.9 or newer (sometimes iPhone or iPad)
sig   = *:64:0:*:65535,4:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0

label = s:unix:iOS:iPhone or iPad
sig   = *:64:0:*:65535,2:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0

; --- fingerprintd additions (not in p0f 3.09b) -------------------------------
; Apple's stack since OS X 10.10 / iOS 8: window 65535, scale 5 or 6 (6 on
; every macOS 11+ and iOS 14+ record seen), options as below. macOS and iOS
; send the same SYN, so the label names both.
; Sources: labeled captures huginn-net__macos_tcp_flags and
; huginn-net__macos_safari_tls_extensions (macOS, scale 6, ground truth),
; chrissanders__http_dvwa_*, chrissanders__sessionhijacking, ndpi__ookla,
; ndpi__anyconnect-vpn (macOS, scale 5), ndpi__netflix (iOS, scale 5);
; zardaxt's 2021 GPL-2.0 records (UAs "Mac OS X 10_15" incl. macOS 11, and
; iOS 14: scale 5 and 6); huginn-net's table.
label = s:unix:Mac OS X:10.10 and newer, or iOS
sig   = *:64:0:*:65535,5:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0
sig   = *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0
; Recent macOS asks for ECN on the SYN and sends IP ID 0, with or without DF
; (huginn-net__macos_tcp_flags: df,ecn; huginn-net__macos_safari_tls_extensions:
; id-,ecn; both ground truth).
sig   = *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:df,ecn:0
sig   = *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:id-,ecn:0
; --- end of fingerprintd additions -----------------------------------------

label = g:unix:Mac OS X:
sig   = *:64:0:*:65535,*:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0

; BSD family.
label = s:unix:FreeBSD:9.x or newer
sig   = *:64:0:*:65535,6:mss,nop,ws,sok,ts:df,id+:0

label = s:unix:FreeBSD:8.x
sig   = *:64:0:*:65535,3:mss,nop,ws,sok,ts:df,id+:0

label = g:unix:FreeBSD:
sig   = *:64:0:*:65535,*:mss,nop,ws,sok,ts:df,id+:0

label = s:unix:OpenBSD:3.x
sig   = *:64:0:*:16384,0:mss,nop,nop,sok,nop,ws,nop,nop,ts:df,id+:0

label = s:unix:OpenBSD:4.x-5.x
sig   = *:64:0:*:16384,3:mss,nop,nop,sok,nop,ws,nop,nop,ts:df,id+:0

; Commercial Unix.
label = s:unix:Solaris:8
sig   = *:64:0:*:32850,1:nop,ws,nop,nop,ts,nop,nop,sok,mss:df,id+:0

label = s:unix:Solaris:10
sig   = *:64:0:*:mss*34,0:mss,nop,ws,nop,nop,sok:df,id+:0

label = s:unix:OpenVMS:8.x
sig   = 4:128:0:1460:mtu*2,0:mss,nop,ws::0

label = s:unix:OpenVMS:7.x
sig   = 4:64:0:1460:61440,0:mss,nop,ws::0

label = s:other:NeXTSTEP:
sig   = 4:64:0:1024:mss*4,0:mss::0

label = s:unix:Tru64:4.x
sig   = 4:64:0:1460:32768,0:mss,nop,ws:df,id+:0

; Scanners. Their TTLs are random up to N, hence 'N-'; tools need 'sys'.
label = s:!:NMap:SYN scan
sys   = @unix,@win
sig   = *:64-:0:1460:1024,0:mss::0
sig   = *:64-:0:1460:2048,0:mss::0
sig   = *:64-:0:1460:3072,0:mss::0
sig   = *:64-:0:1460:4096,0:mss::0

; --- fingerprintd additions (not in p0f 3.09b) -------------------------------
; Mass scanners, measured here: tests/test_scanners.py runs each Debian tool
; once against a host in a network namespace and checks these lines.
; nmap 7.93 -sS over IPv6: hop limit 255 (not random as over IPv4), window 1024.
label = s:!:NMap:SYN scan
sys   = @unix,@win
sig   = 6:255:0:1460:1024,0:mss::0

; masscan 1.3.2: TTL 255, window 1024, no options, no DF.
label = s:!:masscan:
sys   = @unix,@win
sig   = 4:255:0:0:1024,0:::0

; zmap 2.1.1: TTL 255, window 65535, no options, no DF (IP ID 54321).
label = s:!:zmap:
sys   = @unix,@win
sig   = 4:255:0:0:65535,0:::0
; --- end of fingerprintd additions -----------------------------------------

label = s:!:NMap:OS detection
sys   = @unix,@win
sig   = *:64-:0:265:512,0:mss,sok,ts:ack+:0
sig   = *:64-:0:0:4,10:sok,ts,ws,eol+0:ack+:0
sig   = *:64-:0:1460:1,10:ws,nop,mss,ts,sok:ack+:0
sig   = *:64-:0:536:16,10:mss,sok,ts,ws,eol+0:ack+:0
sig   = *:64-:0:640:4,5:ts,nop,nop,ws,nop,mss:ack+:0
sig   = *:64-:0:1400:63,0:mss,ws,sok,ts,eol+0:ack+:0
sig   = *:64-:0:265:31337,10:ws,nop,mss,ts,sok:ack+:0
sig   = *:64-:0:1460:3,10:ws,nop,mss,sok,nop,nop:ecn,uptr+:0

; p0f-sendsyn probes (window 1337, MSS 1331), for collecting SYN+ACK sigs.
label = s:unix:p0f:sendsyn utility
sig   = *:192:0:1331:1337,0:mss,nop,eol+18::0
sig   = *:192:0:1331:1337,0:mss,ts,nop,eol+8::0
sig   = *:192:0:1331:1337,5:mss,ws,nop,eol+15::0
sig   = *:192:0:1331:1337,0:mss,sok,nop,eol+16::0
sig   = *:192:0:1331:1337,5:mss,ws,ts,nop,eol+5::0
sig   = *:192:0:1331:1337,0:mss,sok,ts,nop,eol+6::0
sig   = *:192:0:1331:1337,5:mss,ws,sok,nop,eol+13::0
sig   = *:192:0:1331:1337,5:mss,ws,sok,ts,nop,eol+3::0

; Devices and crawlers.
label = s:other:Blackberry:
sig   = *:128:0:1452:65535,0:mss,nop,nop,sok,nop,nop,ts::0

label = s:other:Nintendo:3DS
sig   = *:64:0:1360:32768,0:mss,nop,nop,sok:df,id+:0

label = s:other:Nintendo:Wii
sig   = 4:64:0:1460:32768,0:mss,nop,nop,sok:df,id+:0

label = s:unix:BaiduSpider:
sig   = *:64:0:1460:mss*4,7:mss,sok,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,ws:df,id+:0
sig   = *:64:0:1460:mss*4,2:mss,sok,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,ws:df,id+:0
; --------------------------------------------------------------------------
; Server SYN+ACKs. Windows here are often a multiple of the client's MSS.
; --------------------------------------------------------------------------

[tcp:response]

; --- fingerprintd additions (not in p0f 3.09b) -------------------------------
; Linux 4.19+ answering: window 45 segments of MSS-12 with timestamps (65160
; for MSS 1460, 64260 for IPv6's 1440), scale per tcp_rmem. Source: SYN+ACKs of
; a Linux 6.18 listener captured by tests/netns.py (IPv4 and IPv6).
label = s:unix:Linux:4.19 and newer
sig   = *:64:0:*:mss*45,7:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*45,8:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*45,9:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*45,10:mss,sok,ts,nop,ws:df:0
; Answering clients of every MSS (49 segments for IPv6 at MTU 1400), clients
; that offer fewer options (no timestamps, no SACK, no window scaling, none),
; and on jumbo frames. With timestamps the segment is MSS-12, so 44 segments
; would need an MTU over 1500: those lines are left out.
; Source: the same listener's SYN+ACKs to each sysctl variant's client.
sig   = *:64:0:*:mss*46,*:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*47,*:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*48,*:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*49,*:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*44,*:mss,nop,nop,sok,nop,ws:df:0
sig   = *:64:0:*:mss*45,*:mss,nop,nop,sok,nop,ws:df:0
sig   = *:64:0:*:mss*46,*:mss,nop,nop,sok,nop,ws:df:0
sig   = *:64:0:*:mss*47,*:mss,nop,nop,sok,nop,ws:df:0
sig   = *:64:0:*:mss*48,*:mss,nop,nop,sok,nop,ws:df:0
sig   = *:64:0:*:mss*45,*:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:mss*46,*:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:mss*47,*:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:mss*48,*:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:mss*49,*:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:mss*45,0:mss,sok,ts:df:0
sig   = *:64:0:*:mss*46,0:mss,sok,ts:df:0
sig   = *:64:0:*:mss*47,0:mss,sok,ts:df:0
sig   = *:64:0:*:mss*48,0:mss,sok,ts:df:0
sig   = *:64:0:*:mss*49,0:mss,sok,ts:df:0
sig   = *:64:0:*:mss*44,0:mss:df:0
sig   = *:64:0:*:mss*45,0:mss:df:0
sig   = *:64:0:*:mss*46,0:mss:df:0
sig   = *:64:0:*:mss*47,0:mss:df:0
sig   = *:64:0:*:mss*48,0:mss:df:0
sig   = 4:64:0:8960:mss*7,*:mss,sok,ts,nop,ws:df:0
sig   = 6:64:0:8940:mss*7,*:mss,sok,ts,nop,ws::0

; Linux 3.x and newer answering a client that offered no timestamps. Source:
; the SYN+ACKs of the Ubuntu Postfix host in the labeled captures
; chrissanders__mail_sender_* (PPA, by its SMTP banner).
label = s:unix:Linux:3.x and newer
sig   = *:64:0:*:mss*20,7:mss,nop,nop,sok,nop,ws:df:0
; The same host answering a client that offered timestamps: 20 segments of
; MSS-12 (28960 for MSS 1460). Source: chrissanders__mail_*_server_* (the
; second Ubuntu Postfix host, by its SMTP banner).
sig   = *:64:0:*:mss*20,7:mss,sok,ts,nop,ws:df:0
; --- end of fingerprintd additions -----------------------------------------

label = s:unix:Linux:3.x
sig   = *:64:0:*:mss*10,0:mss:df:0
sig   = *:64:0:*:mss*10,0:mss,sok,ts:df:0
sig   = *:64:0:*:mss*10,0:mss,nop,nop,ts:df:0
sig   = *:64:0:*:mss*10,0:mss,nop,nop,sok:df:0
sig   = *:64:0:*:mss*10,*:mss,nop,ws:df:0
sig   = *:64:0:*:mss*10,*:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*10,*:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:mss*10,*:mss,nop,nop,sok,nop,ws:df:0

label = s:unix:Linux:2.4-2.6
sig   = *:64:0:*:mss*4,0:mss:df:0
sig   = *:64:0:*:mss*4,0:mss,sok,ts:df:0
sig   = *:64:0:*:mss*4,0:mss,nop,nop,ts:df:0
sig   = *:64:0:*:mss*4,0:mss,nop,nop,sok:df:0

label = s:unix:Linux:2.4.x
sig   = *:64:0:*:mss*4,0:mss,nop,ws:df:0
sig   = *:64:0:*:mss*4,0:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*4,0:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:mss*4,0:mss,nop,nop,sok,nop,ws:df:0

label = s:unix:Linux:2.6.x
sig   = *:64:0:*:mss*4,*:mss,nop,ws:df:0
sig   = *:64:0:*:mss*4,*:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:mss*4,*:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:mss*4,*:mss,nop,nop,sok,nop,ws:df:0

; --- fingerprintd additions (not in p0f 3.09b) -------------------------------
; Windows 2000/XP answering on Ethernet: the default 17520-byte window, 12
; segments of 1460. Source: chrissanders__ppa1e_evilprogram (an XP host's
; SYN+ACKs; XP by its User-Agent).
label = s:win:Windows:XP
sig   = *:128:0:*:mss*12,0:mss,nop,nop,sok:df,id+:0
; --- end of fingerprintd additions -----------------------------------------

; Windows NT 5.x and 6.x stacks: no timestamps, NOPs around WS and SACK-OK.
label = s:win:Windows:XP
sig   = *:128:0:*:65535,0:mss:df,id+:0
sig   = *:128:0:*:65535,0:mss,nop,ws:df,id+:0
sig   = *:128:0:*:65535,0:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,0:mss,nop,nop,ts:df,id+,ts1-:0
sig   = *:128:0:*:65535,0:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:65535,0:mss,nop,ws,nop,nop,ts:df,id+,ts1-:0
sig   = *:128:0:*:65535,0:mss,nop,nop,ts,nop,nop,sok:df,id+,ts1-:0
sig   = *:128:0:*:65535,0:mss,nop,ws,nop,nop,ts,nop,nop,sok:df,id+,ts1-:0
sig   = *:128:0:*:16384,0:mss:df,id+:0
sig   = *:128:0:*:16384,0:mss,nop,ws:df,id+:0
sig   = *:128:0:*:16384,0:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:16384,0:mss,nop,nop,ts:df,id+,ts1-:0
sig   = *:128:0:*:16384,0:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:16384,0:mss,nop,ws,nop,nop,ts:df,id+,ts1-:0
sig   = *:128:0:*:16384,0:mss,nop,nop,ts,nop,nop,sok:df,id+,ts1-:0
sig   = *:128:0:*:16384,0:mss,nop,ws,nop,nop,ts,nop,nop,sok:df,id+,ts1-:0

label = s:win:Windows:7 or 8
sig   = *:128:0:*:8192,0:mss:df,id+:0
sig   = *:128:0:*:8192,0:mss,sok,ts:df,id+:0
sig   = *:128:0:*:8192,8:mss,nop,ws:df,id+:0
sig   = *:128:0:*:8192,0:mss,nop,nop,ts:df,id+:0
sig   = *:128:0:*:8192,0:mss,nop,nop,sok:df,id+:0
sig   = *:128:0:*:8192,8:mss,nop,ws,sok,ts:df,id+:0
sig   = *:128:0:*:8192,8:mss,nop,ws,nop,nop,ts:df,id+:0
sig   = *:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0

label = s:unix:FreeBSD:9.x
sig   = *:64:0:*:65535,6:mss,nop,ws:df,id+:0
sig   = *:64:0:*:65535,6:mss,nop,ws,sok,ts:df,id+:0
sig   = *:64:0:*:65535,6:mss,nop,ws,sok,eol+1:df,id+:0
sig   = *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts:df,id+:0

label = s:unix:FreeBSD:8.x
sig   = *:64:0:*:65535,3:mss,nop,ws:df,id+:0
sig   = *:64:0:*:65535,3:mss,nop,ws,sok,ts:df,id+:0
sig   = *:64:0:*:65535,3:mss,nop,ws,sok,eol+1:df,id+:0
sig   = *:64:0:*:65535,3:mss,nop,ws,nop,nop,ts:df,id+:0

label = s:unix:FreeBSD:8.x-9.x
sig   = *:64:0:*:65535,0:mss,sok,ts:df,id+:0
sig   = *:64:0:*:65535,0:mss,sok,eol+1:df,id+:0
sig   = *:64:0:*:65535,0:mss,nop,nop,ts:df,id+:0

label = s:unix:OpenBSD:5.x
sig   = *:64:0:1460:16384,0:mss,nop,nop,sok:df,id+:0
sig   = *:64:0:1460:16384,3:mss,nop,ws:df,id+:0
sig   = *:64:0:1460:16384,3:mss,nop,nop,sok,nop,ws:df,id+:0
sig   = *:64:0:1460:16384,0:mss,nop,nop,ts:df,id+:0
sig   = *:64:0:1460:16384,0:mss,nop,nop,sok,nop,nop,ts:df,id+:0
sig   = *:64:0:1460:16384,3:mss,nop,ws,nop,nop,ts:df,id+:0
sig   = *:64:0:1460:16384,3:mss,nop,nop,sok,nop,ws,nop,nop,ts:df,id+:0

; Apple stacks: timestamps and a trailing EOL pad.
label = s:unix:Mac OS X:10.x
sig   = *:64:0:*:65535,0:mss,nop,ws:df,id+:0
sig   = *:64:0:*:65535,0:mss,sok,eol+1:df,id+:0
sig   = *:64:0:*:65535,0:mss,nop,nop,ts:df,id+:0
sig   = *:64:0:*:65535,0:mss,nop,ws,sok,eol+1:df,id+:0
sig   = *:64:0:*:65535,0:mss,nop,ws,nop,nop,ts:df,id+:0
sig   = *:64:0:*:65535,0:mss,nop,nop,ts,sok,eol+1:df,id+:0
sig   = *:64:0:*:65535,0:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0

label = s:unix:Solaris:6
sig   = 4:255:0:*:mss*7,0:mss:df,id+:0
sig   = 4:255:0:*:mss*7,0:nop,ws,mss:df,id+:0
sig   = 4:255:0:*:mss*7,0:nop,nop,ts,mss:df,id+:0
sig   = 4:255:0:*:mss*7,0:nop,nop,ts,nop,ws,mss:df,id+:0

; Commercial Unix.
label = s:unix:Solaris:8
sig   = *:64:0:*:mss*19,0:mss:df,id+:0
sig   = *:64:0:*:mss*19,0:nop,ws,mss:df,id+:0
sig   = *:64:0:*:mss*19,0:nop,nop,ts,mss:df,id+:0
sig   = *:64:0:*:mss*19,0:nop,nop,sok,mss:df,id+:0
sig   = *:64:0:*:mss*19,0:nop,nop,ts,nop,ws,mss:df,id+:0
sig   = *:64:0:*:mss*19,0:nop,ws,nop,nop,sok,mss:df,id+:0
sig   = *:64:0:*:mss*19,0:nop,nop,ts,nop,nop,sok,mss:df,id+:0
sig   = *:64:0:*:mss*19,0:nop,nop,ts,nop,ws,nop,nop,sok,mss:df,id+:0

label = s:unix:Solaris:10
sig   = *:64:0:*:mss*37,0:mss:df,id+:0
sig   = *:64:0:*:mss*37,0:mss,nop,ws:df,id+:0
sig   = *:64:0:*:mss*37,0:nop,nop,ts,mss:df,id+:0
sig   = *:64:0:*:mss*37,0:mss,nop,nop,sok:df,id+:0
sig   = *:64:0:*:mss*37,0:nop,nop,ts,mss,nop,ws:df,id+:0
sig   = *:64:0:*:mss*37,0:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:64:0:*:mss*37,0:nop,nop,ts,mss,nop,nop,sok:df,id+:0
sig   = *:64:0:*:mss*37,0:nop,nop,ts,mss,nop,ws,nop,nop,sok:df,id+:0

label = s:unix:HP-UX:11.x
sig   = *:64:0:*:32768,0:mss:df,id+:0
sig   = *:64:0:*:32768,0:mss,ws,nop:df,id+:0
sig   = *:64:0:*:32768,0:mss,nop,nop,ts:df,id+:0
sig   = *:64:0:*:32768,0:mss,nop,nop,sok:df,id+:0
sig   = *:64:0:*:32768,0:mss,ws,nop,nop,nop,ts:df,id+:0
sig   = *:64:0:*:32768,0:mss,nop,nop,sok,ws,nop:df,id+:0
sig   = *:64:0:*:32768,0:mss,nop,nop,sok,nop,nop,ts:df,id+:0
sig   = *:64:0:*:32768,0:mss,nop,nop,sok,ws,nop,nop,nop,ts:df,id+:0

label = s:other:OpenVMS:7.x
sig   = 4:64:0:1460:3993,0:mss::0
sig   = 4:64:0:1460:3993,0:mss,nop,ws::0

label = s:unix:Tru64:4.x
sig   = 4:64:0:1460:mss*25,0:mss,nop,ws:df,id+:0
sig   = 4:64:0:1460:mss*25,0:mss:df,id+:0
