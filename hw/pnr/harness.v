// Place-and-route harness for ternary_acc: the core fed from an on-chip LFSR (weights and
// activations change every cycle, so nothing is optimised away), rows of ROW_BEATS beats, the
// row results folded onto 8 pins. Only clk, rst and the pins leave the chip, so any lane count
// fits the package; Fmax and area are the core's plus a shift register.
module pnr_harness #(
    parameter integer BYTES = 4,
    parameter integer ROW_BEATS = 10
) (
    input  wire       clk,
    input  wire       rst,
    output wire [7:0] led
);
  localparam integer W = 40 * BYTES;  // bits per beat: 8*BYTES of weights + 32*BYTES of activations
  reg [W-1:0] r;
  always @(posedge clk)
    if (rst) r <= {{(W-1){1'b0}}, 1'b1};
    else r <= {r[W-2:0], r[W-1] ^ r[W/2] ^ r[W/3] ^ r[0]};

  reg [7:0] beat;
  wire in_ready, out_valid;
  wire signed [31:0] out_acc;
  wire last = beat == ROW_BEATS - 1;
  always @(posedge clk)
    if (rst) beat <= 0;
    else if (in_ready) beat <= last ? 8'd0 : beat + 8'd1;

  ternary_acc #(.BYTES(BYTES)) core (
      .clk(clk), .rst(rst), .in_valid(1'b1), .in_ready(in_ready),
      .in_w(r[8*BYTES-1:0]), .in_x(r[W-1:8*BYTES]), .in_last(last),
      .out_valid(out_valid), .out_ready(1'b1), .out_acc(out_acc));

  reg [31:0] fold;
  always @(posedge clk)
    if (rst) fold <= 0;
    else if (out_valid) fold <= fold ^ out_acc;
  assign led = fold[7:0] ^ fold[15:8] ^ fold[23:16] ^ fold[31:24];
endmodule

// The same for the TQ1 core (tq1_decoder in front of ternary_acc): blocks and activations from
// the LFSR, rows of ROW_BLOCKS blocks.
module pnr_harness_tq1 #(
    parameter integer BYTES = 4,
    parameter integer ROW_BLOCKS = 3
) (
    input  wire       clk,
    input  wire       rst,
    output wire [7:0] led
);
  localparam integer W = 8 * 54 + 32 * BYTES;  // a block and a beat of activations
  reg [W-1:0] r;
  always @(posedge clk)
    if (rst) r <= {{(W-1){1'b0}}, 1'b1};
    else r <= {r[W-2:0], r[W-1] ^ r[W/2] ^ r[W/3] ^ r[0]};

  reg [7:0] block;
  wire blk_ready, x_ready, out_valid;
  wire signed [31:0] out_acc;
  wire last = block == ROW_BLOCKS - 1;
  always @(posedge clk)
    if (rst) block <= 0;
    else if (blk_ready) block <= last ? 8'd0 : block + 8'd1;

  ternary_acc_tq1 #(.BYTES(BYTES)) core (
      .clk(clk), .rst(rst), .blk_valid(1'b1), .blk_ready(blk_ready), .blk(r[8*54-1:0]), .blk_last(last),
      .x_valid(1'b1), .x_ready(x_ready), .x(r[W-1:8*54]),
      .out_valid(out_valid), .out_ready(1'b1), .out_acc(out_acc));

  reg [31:0] fold;
  always @(posedge clk)
    if (rst) fold <= 0;
    else if (out_valid) fold <= fold ^ out_acc;
  assign led = fold[7:0] ^ fold[15:8] ^ fold[23:16] ^ fold[31:24];
endmodule
