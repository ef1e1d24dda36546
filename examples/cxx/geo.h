// The library's interface: the program and the patch both include it.
#ifndef GEO_H
#define GEO_H

namespace geo {

class Shape {
public:
    virtual ~Shape();
    virtual double area() const = 0;
};

class Rect : public Shape {
public:
    Rect(double width, double height);
    double area() const override;   // a virtual member function
    double perimeter() const;       // a member function

protected:
    double width_, height_;
};

int clamp(int value);                   // to 0..100
int clamp(int value, int low, int high); // an overload

// a function in a namespace
double total_area(const Shape *const *shapes, int count);

}  // namespace geo

int geo_version();  // a free function

#endif
