/*
 * MySQL / MariaDB wire constants shared by the native data plane's C files (the relay's client scanner
 * and the response tracker), named once. The TypeScript twin is proxy/mysql/constants.ts, which cites
 * the protocol references; the values must match it.
 */
#ifndef CDBP_WIRE_H
#define CDBP_WIRE_H

/* Command bytes: the first payload byte of a client packet with sequence id 0. */
enum {
  COM_SLEEP = 0x00,
  COM_QUIT = 0x01,
  COM_QUERY = 0x03,
  COM_FIELD_LIST = 0x04,
  COM_CREATE_DB = 0x05,
  COM_DROP_DB = 0x06,
  COM_STATISTICS = 0x09,
  COM_CHANGE_USER = 0x11,
  COM_BINLOG_DUMP = 0x12,
  COM_REGISTER_SLAVE = 0x15,
  COM_STMT_PREPARE = 0x16,
  COM_STMT_EXECUTE = 0x17,
  COM_STMT_SEND_LONG_DATA = 0x18,
  COM_STMT_CLOSE = 0x19,
  COM_STMT_FETCH = 0x1c,
  COM_BINLOG_DUMP_GTID = 0x1e,
  COM_RESET_CONNECTION = 0x1f,
  COM_STMT_BULK_EXECUTE = 0xfa,
  COM_MULTI = 0xfe,
};

/* Server status flags (SERVER_STATUS_*) the tracker reads. */
enum {
  STATUS_IN_TRANS = 0x0001,
  STATUS_MORE_RESULTS_EXISTS = 0x0008,
  STATUS_CURSOR_EXISTS = 0x0040,
};

/* First payload byte of server packets. */
enum { HDR_OK = 0x00, HDR_LOCAL_INFILE = 0xfb, HDR_EOF = 0xfe, HDR_ERR = 0xff };

/* 4-byte packet header: int<3> payload length, int<1> sequence id. */
#define PACKET_HEADER_SIZE 4
/* Largest payload of one physical packet; a payload of exactly this size continues in the next packet. */
#define MAX_PACKET_PAYLOAD 0xffffffu

/* Bytes of a COM_CHANGE_USER payload (command byte included) that must be contiguous to read the user
 * name: forbidden-user.ts CHANGE_USER_INSPECT_BYTES. */
#define CHANGE_USER_INSPECT 256

#endif
